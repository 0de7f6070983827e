"""The rendered job.sh, run for real by bash (no Slurm): what a pod asks for reaches the process.

The runtime is "charliecloud" with ``runtime_path`` pointing at a stand-in for ch-run, a small
Python script that records the argv it was given (split at ch-run's ``--``) and its environment
as hex bytes in ``$ILS_PROBE_OUT/<container>.json``. Comparing those bytes with what the pod
asked for checks every layer at once: the plan, the env file, the quoting of the script, bash's
``read -d ''`` loop and ``env``.

Kubernetes expands ``$(VAR)`` and ``$$`` in command, args and env values; the property writes
each ``$`` of its inputs as ``$$`` (the Kubernetes escape), so the container must see the input
text exactly — including ``$(id)`` and backticks, which only the shell would expand.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import interlink_slurm
from interlink_slurm.config import Settings, load_settings
from interlink_slurm.jobdir import read_container
from interlink_slurm.logpipe import RECORD
from interlink_slurm.slurm.transport import LocalTransport
from interlink_slurm.translate.plan import JobPlan
from interlink_slurm.translate.pod import build_plan
from interlink_slurm.translate.script import render_script
from interlink_slurm.wire import RetrievedPodData
from tests import podgen as pg
from tests import squashfs

IMAGE_DIR = "/some/dir"
# Job ids above Slurm's largest (67,108,863): a job script's reap and /tmp sweep act on every
# process of the machine that carries its SLURM_JOB_ID, and the integration tests' real jobs
# run beside these tests (make test runs them in parallel).
FAKE_JOB = "970000077"
FAKE_JOBS = "9700000"  # + "4", "42"...
MARKER = "ILS_PROBE_CONTAINER"

STAND_IN = """#!{python}
import json, os, sys, time
argv = [os.fsencode(a) for a in sys.argv[1:]]
sep = argv.index(b"--")
record = {{
    "runtime_args": [a.hex() for a in argv[:sep]],
    "command": [a.hex() for a in argv[sep + 1:]],
    "env": {{k.hex(): v.hex() for k, v in os.environb.items()}},
}}
hook = argv[sep + 1:sep + 2] == [b"ils-hook"]  # a postStart hook's command, not the container
suffix = ".hook.json" if hook else ".json"
out = os.path.join(os.environ["ILS_PROBE_OUT"], os.environ["{marker}"] + suffix)
with open(out, "w") as f:
    json.dump(record, f)
if hook:
    sys.exit(0)
# Runs counted per container; the first ILS_PROBE_FAIL_TIMES runs fail (restartPolicy tests).
runs_file = out[: -len(".json")] + ".runs"
runs = int(open(runs_file).read()) + 1 if os.path.exists(runs_file) else 1
with open(runs_file, "w") as f:
    f.write(str(runs))
print("run", runs, flush=True)
if runs <= int(os.environ.get("ILS_PROBE_FAIL_TIMES", "0")):
    sys.exit(1)
time.sleep(float(os.environ.get("ILS_PROBE_SLEEP", "0")))
sys.exit(int(os.environ.get("ILS_PROBE_EXIT", "0")))
"""


def _usable(path: Path) -> Path:
    # Settings refuse a data_root with whitespace, ':' or ','; so do bind specs.
    assert not any(c.isspace() or c in ":," for c in str(path)), path
    return path


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = _usable(tmp_path_factory.mktemp("bin"))
    exe = d / "fake-ch-run"
    exe.write_text(STAND_IN.format(python=sys.executable, marker=MARKER))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return d


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _usable(tmp_path_factory.mktemp("pods"))


def charliecloud(data_root: Path, runtime_path: str, image: str = IMAGE_DIR) -> Settings:
    return load_settings(
        None,
        data_root=str(data_root),
        runtime="charliecloud",
        runtime_path=runtime_path,
        images={"img": image},
    )


def plan_for(the_pod: dict[str, Any], s: Settings, **objects: Any) -> JobPlan:
    pod_dir = tempfile.mkdtemp(prefix="pod-", dir=s.data_root)
    data = RetrievedPodData.model_validate(pg.retrieved(the_pod, **objects))
    return build_plan(data, s, pod_dir)


def inside(root: str, path: str) -> bool:
    """Whether ``path`` (relative to ``root``, or absolute) lies strictly inside ``root``."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(root, path))
    return os.path.normpath(os.path.join(root, path)).startswith(
        os.path.normpath(root) + os.sep
    ) and real.startswith(real_root + os.sep)


def lay_out(plan: JobPlan) -> Path:
    """What jobdir does: the plan's directories and files (with their modes), and job.sh."""
    root = Path(plan.pod_dir)
    root.mkdir(parents=True, exist_ok=True)
    for d in plan.dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for f in plan.files:
        path = root / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f.content)
        path.chmod(f.mode)
    (root / "job.sh").write_text(render_script(plan))
    return root


@dataclass(frozen=True)
class Run:
    returncode: int
    output: str  # what sbatch would put in job.out


def run_job(plan: JobPlan, **env: str) -> tuple[Run, Path]:
    """``bash job.sh`` in the pod directory, its output in a file as under sbatch (a pipe would
    also wait for any helper process the script leaves behind)."""
    root = lay_out(plan)
    out = root / "probe"
    out.mkdir()
    job_out = root / "job.out"
    with job_out.open("wb") as sink:
        proc = subprocess.run(
            ["bash", "job.sh"],
            cwd=root,
            env={**os.environ, "ILS_PROBE_OUT": str(out), **env},
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            timeout=60,
        )
    return Run(proc.returncode, job_out.read_text(errors="replace")), out


def seen(out: Path, name: str) -> dict[str, Any]:
    record = json.loads((out / f"{name}.json").read_text())
    return {
        "runtime_args": [bytes.fromhex(a) for a in record["runtime_args"]],
        "command": [bytes.fromhex(a) for a in record["command"]],
        "env": {bytes.fromhex(k): bytes.fromhex(v) for k, v in record["env"].items()},
    }


def escape(text: str) -> str:
    """Kubernetes' escape: '$$' reads as '$', so the text is passed through unexpanded."""
    return text.replace("$", "$$")


# --- strategies ---------------------------------------------------------------------------------

TRICKY = [
    "",
    " ",
    "  two  spaces ",
    "'",
    '"',
    "\\",
    "'\"'\"'",
    "$HOME",
    "${HOME}",
    "$(id)",
    "`id`",
    "$((1+1))",
    "$'x'",
    "$",
    "$$",
    "!!",
    "*",
    "?",
    "~",
    "-",
    "--",
    "-x",
    "--help",
    "-c",
    ";rm -rf /tmp/nothing",
    "&&",
    "|",
    ">out",
    "<in",
    "#",
    "=",
    "a=b",
    "%s%n",
    "a\nb",
    "\n",
    "\r\n",
    "\t",
    "\x01\x7f",
    "\x1b[31m",
    "é",
    "日本語",
    "😀",
    "\u2028",
    "\ufeff",
]
TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=16
)
PIECE = st.sampled_from(TRICKY)
ARG = st.one_of(TEXT, PIECE, st.lists(st.one_of(PIECE, TEXT), max_size=4).map("".join))
CONTAINER_NAME = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,14}[a-z0-9])?", fullmatch=True)
PRINTABLE_NO_EQUALS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "=")
ENV_NAME = st.one_of(
    st.from_regex(r"T_[A-Za-z0-9_]{1,8}", fullmatch=True),
    st.text(PRINTABLE_NO_EQUALS, min_size=1, max_size=8).map(lambda s: "T" + s),
    st.sampled_from(["-X", "a.b-c", "A$B", "X(1)", "`id`", "'q'"]),
)
CONFIG_KEY = st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True).filter(
    lambda k: k not in (".", "..")
)


@dataclass(frozen=True)
class Spec:
    name: str
    command: list[str]
    args: list[str]
    env: list[tuple[str, str]]
    working_dir: str

    def as_container(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "image": "img",
            "args": [escape(a) for a in self.args],
            "env": [{"name": MARKER, "value": self.name}]
            + [{"name": n, "value": escape(v)} for n, v in self.env],
            "volumeMounts": [
                {"name": "cfg", "mountPath": "/etc/cfg"},
                {"name": "scratch", "mountPath": "/scratch"},
            ],
        }
        if self.working_dir:
            fields["workingDir"] = self.working_dir
        return pg.container(self.name, command=[escape(a) for a in self.command], **fields)


@st.composite
def pods(draw: st.DrawFn) -> tuple[list[Spec], list[Spec], dict[str, str]]:
    names = draw(st.lists(CONTAINER_NAME, min_size=1, max_size=3, unique=True))
    specs = [
        Spec(
            name=name,
            command=draw(st.lists(ARG, min_size=1, max_size=4)),
            args=draw(st.lists(ARG, max_size=3)),
            env=[(n, draw(ARG)) for n in draw(st.lists(ENV_NAME, max_size=4, unique=True))],
            working_dir=draw(st.one_of(st.just(""), TEXT.map(lambda t: "/" + t))),
        )
        for name in names
    ]
    n_init = draw(st.integers(0, len(specs) - 1))
    config = draw(st.dictionaries(CONFIG_KEY, TEXT, max_size=3))
    return specs[:n_init], specs[n_init:], config


# --- the property -------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(pods())
def test_command_args_and_env_reach_the_process_byte_exact(
    bin_dir: Path,
    data_root: Path,
    pod: tuple[list[Spec], list[Spec], dict[str, str]],
) -> None:
    init, regular, config = pod
    the_pod = pg.pod(
        "probe",
        [s.as_container() for s in regular],
        init=[s.as_container() for s in init],
        volumes=[
            {"name": "cfg", "configMap": {"name": "probe-config"}},
            {"name": "scratch", "emptyDir": {}},
        ],
    )
    s = charliecloud(data_root, str(bin_dir / "fake-ch-run"))
    plan = plan_for(the_pod, s, config_maps=[pg.config_map("probe-config", config)])

    # Everything the plan writes or binds stays inside the pod directory.
    for f in plan.files:
        assert inside(plan.pod_dir, f.path), f.path
    for d in plan.dirs:
        assert inside(plan.pod_dir, d), d
    for c in (*plan.init_containers, *plan.containers):
        for b in c.binds:
            assert inside(plan.pod_dir, b.source), b.source

    run, out = run_job(plan)
    assert run.returncode == 0, run.output
    containers_dir = Path(plan.pod_dir) / "containers"
    for spec in (*init, *regular):
        got = seen(out, spec.name)
        assert got["command"] == [a.encode() for a in (*spec.command, *spec.args)]
        expected_env = {MARKER: spec.name, **dict(spec.env)}
        for name, value in expected_env.items():
            assert got["env"].get(name.encode()) == value.encode(), name
        # The image's ENV and working directory (none here: it is no ch-image directory).
        assert got["runtime_args"][:3] == [
            f"--set-env=containers/{spec.name}.image-env".encode(),
            b"-c",
            (spec.working_dir or "/").encode(),
        ]
        assert (containers_dir / f"{spec.name}.image-env").read_bytes() == b""
        # The container's own /tmp, a directory of the job on the node, gone when the job ends.
        bind, tmp = got["runtime_args"][3:5]
        assert bind == b"-b" and re.fullmatch(
            rb".+/interlink-slurm-pid[0-9]+/" + re.escape(spec.name.encode()) + rb":/tmp", tmp
        )
        assert not Path(os.fsdecode(tmp.rsplit(b":", 1)[0])).exists()
        runtime_args = [
            "-b",
            f"{plan.pod_dir}/volumes/cfg:/etc/cfg",
            "-b",
            f"{plan.pod_dir}/volumes/scratch:/scratch",
            IMAGE_DIR,
        ]
        assert got["runtime_args"][5:] == [a.encode() for a in runtime_args]
        assert (containers_dir / f"{spec.name}.exit").read_text() == "0\n"
        assert (containers_dir / f"{spec.name}.started").is_file()
        assert (containers_dir / f"{spec.name}.finished").is_file()
        assert (containers_dir / f"{spec.name}.log").is_file()
    config_files = {
        p.name: p.read_bytes().decode() for p in (Path(plan.pod_dir) / "volumes" / "cfg").iterdir()
    }
    assert config_files == config


# --- exit codes and order -----------------------------------------------------------------------


def probe(name: str, exit_code: int = 0) -> dict[str, Any]:
    env = [{"name": MARKER, "value": name}, {"name": "ILS_PROBE_EXIT", "value": str(exit_code)}]
    return pg.container(name, command=["run", name], image="img", env=env)


def test_failing_init_container_ends_the_pod_with_its_code(bin_dir: Path, data_root: Path) -> None:
    the_pod = pg.pod("probe", [probe("main")], init=[probe("first"), probe("second", 3)])
    plan = plan_for(the_pod, charliecloud(data_root, str(bin_dir / "fake-ch-run")))
    run, out = run_job(plan)
    assert run.returncode == 3
    containers = Path(plan.pod_dir) / "containers"
    assert (containers / "first.exit").read_text() == "0\n"
    assert (containers / "second.exit").read_text() == "3\n"
    assert not (containers / "main.started").exists()
    assert not (out / "main.json").exists()


def test_job_exit_code_is_the_first_failing_container(bin_dir: Path, data_root: Path) -> None:
    the_pod = pg.pod("probe", [probe("ok"), probe("bad", 5), probe("worse", 7)])
    plan = plan_for(the_pod, charliecloud(data_root, str(bin_dir / "fake-ch-run")))
    run, _ = run_job(plan)
    assert run.returncode == 5
    containers = Path(plan.pod_dir) / "containers"
    assert [(containers / f"{n}.exit").read_text() for n in ("ok", "bad", "worse")] == [
        "0\n",
        "5\n",
        "7\n",
    ]


def test_pod_path_does_not_hide_the_runtime_binary(bin_dir: Path, data_root: Path) -> None:
    c = probe("main")
    c["env"].append({"name": "PATH", "value": "/opt/conda/bin"})
    plan = plan_for(pg.pod("probe", [c]), charliecloud(data_root, "fake-ch-run"))
    _, out = run_job(plan, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert (Path(plan.pod_dir) / "containers" / "main.exit").read_text() == "0\n"
    assert seen(out, "main")["env"][b"PATH"] == b"/opt/conda/bin"


def ch_image(root: Path, environment: str, metadata: dict[str, Any] | None) -> Path:
    """An image directory as ch-image leaves it: ch/environment, and ch/metadata.json written
    with json.dumps(indent=2, sort_keys=True)."""
    (root / "ch").mkdir(parents=True)
    (root / "ch" / "environment").write_text(environment)
    if metadata is not None:
        text = json.dumps(metadata, indent=2, sort_keys=True)
        (root / "ch" / "metadata.json").write_text(text + "\n")
    return root


@pytest.mark.parametrize("packed", [False, True], ids=["directory", "squashfs"])
def test_a_charliecloud_image_s_env_and_workdir_apply_and_the_pod_s_env_wins(
    bin_dir: Path, data_root: Path, tmp_path: Path, packed: bool
) -> None:
    image = ch_image(
        _usable(tmp_path) / "img",
        "LANG=C.UTF-8\nPATH=/opt/conda/bin:/usr/bin\nSHARED=image\nnot a variable\n"
        "1BAD=x\nQUOTED='a b'\nLAST=no newline",
        # A nested "cwd" (an ARG of that name) is not the image's working directory.
        {"arg": {"cwd": "/nested"}, "cwd": "/work dir", "env": {"LANG": "C.UTF-8"}},
    )
    if packed:
        # As ch-convert packs one; the job reads it with unsquashfs -cat (squashfs-tools, which
        # Debian's charliecloud package brings, as deploy/local/cluster.sh installs it).
        image = squashfs.pack(image, image.with_suffix(".sqfs"))
    s = charliecloud(data_root, str(bin_dir / "fake-ch-run"), str(image))
    main = probe("main")
    main["env"].append({"name": "SHARED", "value": "pod\nsecond line"})
    plan = plan_for(pg.pod("probe", [main, {**probe("wd"), "workingDir": "/srv"}]), s)
    run, out = run_job(plan)
    assert run.returncode == 0, run.output
    containers = Path(plan.pod_dir) / "containers"
    # ch-run reads the file (--set-env) and sets its variables inside the container, over the
    # job's; what the pod sets stays in ch-run's environment, never overridden by the image.
    assert (containers / "main.image-env").read_text() == (
        "LANG=C.UTF-8\nPATH=/opt/conda/bin:/usr/bin\nQUOTED='a b'\nLAST=no newline\n"
    )
    assert (containers / "wd.image-env").read_text() == (
        "LANG=C.UTF-8\nPATH=/opt/conda/bin:/usr/bin\nSHARED=image\nQUOTED='a b'\nLAST=no newline\n"
    )
    got = seen(out, "main")
    assert got["runtime_args"][:3] == [b"--set-env=containers/main.image-env", b"-c", b"/work dir"]
    assert got["env"][b"SHARED"] == b"pod\nsecond line"
    # The pod's workingDir wins over the image's.
    assert seen(out, "wd")["runtime_args"][:3] == [
        b"--set-env=containers/wd.image-env",
        b"-c",
        b"/srv",
    ]


@pytest.mark.parametrize(
    ("environment", "metadata"),
    [
        (None, None),  # not made by ch-image
        ("A=1\n", {"cwd": "relative"}),  # no absolute path: ch-run would refuse it
        ("A=1\n", {"cwd": '/with \\"quote'}),  # JSON escapes are not unescaped by guess
    ],
)
def test_an_image_that_says_no_workdir_runs_in_the_root(
    bin_dir: Path,
    data_root: Path,
    tmp_path: Path,
    environment: str | None,
    metadata: dict[str, Any] | None,
) -> None:
    image = _usable(tmp_path) / "img"
    if environment is None:
        image.mkdir()
    else:
        ch_image(image, environment, metadata)
    s = charliecloud(data_root, str(bin_dir / "fake-ch-run"), str(image))
    plan = plan_for(pg.pod("probe", [probe("main")]), s)
    run, out = run_job(plan)
    assert run.returncode == 0, run.output
    assert seen(out, "main")["runtime_args"][1:3] == [b"-c", b"/"]
    expected = "" if environment is None else environment
    assert (Path(plan.pod_dir) / "containers" / "main.image-env").read_text() == expected


# --- annotations: pre-exec, the tunnel, MPI launchers -------------------------------------------

LAUNCHER_STAND_IN = """#!/bin/bash
# Records its own options and environment, and runs what follows them (from the first absolute
# path: the job's bash reading the env file), as srun/mpiexec would on one task.
: > "$ILS_PROBE_OUT/launcher.args"
env -0 > "$ILS_PROBE_OUT/launcher.env"
while [ "$#" -gt 0 ] && [ "${1#/}" = "$1" ]; do
  printf '%s\\0' "$1" >> "$ILS_PROBE_OUT/launcher.args"; shift
done
exec "$@"
"""


def annotated_probe(annotations: dict[str, str], s: Settings) -> JobPlan:
    the_pod = pg.pod("probe", [probe("main")], init=[probe("setup")], annotations=annotations)
    return plan_for(the_pod, s)


def test_pre_exec_runs_in_the_job_before_the_containers_and_can_set_their_environment(
    bin_dir: Path, data_root: Path
) -> None:
    code = "echo \"unset is fine: $NOT_SET_ANYWHERE\"\nexport FROM_PRE_EXEC='it''s set'\ncd /"
    plan = annotated_probe(
        {"slurm-job.vk.io/pre-exec": code}, charliecloud(data_root, str(bin_dir / "fake-ch-run"))
    )
    run, out = run_job(plan)
    assert run.returncode == 0, run.output
    assert "unset is fine: \n" in run.output
    # ch-run passes the job's environment through: what pre-exec exports reaches the containers.
    assert seen(out, "setup")["env"][b"FROM_PRE_EXEC"] == b"its set"
    assert seen(out, "main")["env"][b"FROM_PRE_EXEC"] == b"its set"


def test_tunnel_runs_while_the_containers_run_and_is_stopped_after(
    bin_dir: Path, data_root: Path
) -> None:
    tunnel = "sleep 300 & echo $! > pid; echo started > state"
    plan = annotated_probe(
        {"interlink.eu/wstunnel-client-commands": tunnel},
        charliecloud(data_root, str(bin_dir / "fake-ch-run")),
    )
    run, _ = run_job(plan)
    assert run.returncode == 0, run.output
    tunnel_dir = Path(plan.pod_dir) / "tunnel"
    assert (tunnel_dir / "state").read_text() == "started\n"
    pid = int((tunnel_dir / "pid").read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        # A killed child of a dead parent may linger as a zombie until reaped: not running.
        if "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]:
            break
        time.sleep(0.05)
    alive = (
        Path(f"/proc/{pid}").exists()
        and "Z" not in (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0])
    )
    assert not alive, "the tunnel outlived the job"


def stand_in(launch_dir: Path, launcher: str) -> None:
    launch_dir.mkdir(exist_ok=True)
    exe = launch_dir / launcher
    exe.write_text(LAUNCHER_STAND_IN)
    exe.chmod(0o755)


@pytest.mark.parametrize(
    ("launcher", "flags", "expected"),
    [
        # srun's step is named for the container first: a delete finds it by that name.
        (
            "srun",
            "--cpu-bind 'map_cpu:0 1' -l",
            [b"--job-name=ils-pod-main", b"--cpu-bind=map_cpu:0 1", b"--label"],
        ),
        ("mpiexec", "-bind-to 'core x'", [b"-np", b"8", b"--bind-to", b"core x"]),
    ],
)
def test_mpi_launcher_runs_the_container_with_the_pods_flags(
    bin_dir: Path,
    data_root: Path,
    tmp_path: Path,
    launcher: str,
    flags: str,
    expected: list[bytes],
) -> None:
    stand_in(tmp_path / "launchers", launcher)
    annotations = {"interlink-slurm/mpi-launcher": launcher, "slurm-job.vk.io/mpi-flags": flags}
    plan = annotated_probe(annotations, charliecloud(data_root, str(bin_dir / "fake-ch-run")))
    path = f"{tmp_path / 'launchers'}{os.pathsep}{os.environ['PATH']}"
    run, out = run_job(plan, PATH=path, SLURM_NTASKS="8")
    assert run.returncode == 0, run.output
    args = (out / "launcher.args").read_bytes().split(b"\0")[:-1]
    assert args == expected
    assert seen(out, "main")["command"] == [b"run", b"main"]


@pytest.mark.parametrize("launcher", ["srun", "mpirun"])
def test_the_launcher_never_sees_the_pods_environment(
    bin_dir: Path, data_root: Path, tmp_path: Path, launcher: str
) -> None:
    # srun writes its tasks' output where SLURM_STDOUTMODE says, runs SLURM_TASK_PROLOG...
    c = probe("main")
    c["env"] += [
        {"name": "SLURM_STDOUTMODE", "value": "/var/tmp/pod-chose-this"},
        {"name": "OMPI_MCA_plm_rsh_agent", "value": "/bin/pod-agent"},
        {"name": "WITH_NEWLINE", "value": "a\nb"},
    ]
    the_pod = pg.pod("probe", [c], annotations={"interlink-slurm/mpi-launcher": launcher})
    plan = plan_for(the_pod, charliecloud(data_root, str(bin_dir / "fake-ch-run")))
    stand_in(tmp_path / "launchers", launcher)
    path = f"{tmp_path / 'launchers'}{os.pathsep}{os.environ['PATH']}"
    run, out = run_job(plan, PATH=path, SLURM_NTASKS="1", SLURM_JOB_ID=FAKE_JOB)
    assert run.returncode == 0, run.output
    launcher_env = dict(
        e.split(b"=", 1) for e in (out / "launcher.env").read_bytes().split(b"\0") if e
    )
    assert b"SLURM_STDOUTMODE" not in launcher_env
    assert b"OMPI_MCA_plm_rsh_agent" not in launcher_env
    assert MARKER.encode() not in launcher_env
    assert launcher_env[b"SLURM_JOB_ID"] == FAKE_JOB.encode()  # the job's own context stays
    # ...while the runtime, after the launcher, gets every variable of the pod, byte-exact.
    env = seen(out, "main")["env"]
    assert env[b"SLURM_STDOUTMODE"] == b"/var/tmp/pod-chose-this"
    assert env[b"WITH_NEWLINE"] == b"a\nb"
    assert env[MARKER.encode()] == b"main"
    assert env[b"SLURM_JOB_ID"] == FAKE_JOB.encode()


@settings(max_examples=25, deadline=None)
@given(st.lists(ARG, min_size=1, max_size=4))
def test_mpi_flags_reach_the_launcher_byte_exact(
    bin_dir: Path, data_root: Path, tmp_path_factory: pytest.TempPathFactory, words: list[str]
) -> None:
    launch_dir = tmp_path_factory.mktemp("srun")
    stand_in(launch_dir, "srun")
    values = [w for w in words if w and "\n" not in w]
    assume(values)
    text = shlex.join(f"--cpu-bind={w}" for w in values)
    annotations = {"interlink-slurm/mpi-launcher": "srun", "slurm-job.vk.io/mpi-flags": text}
    plan = annotated_probe(annotations, charliecloud(data_root, str(bin_dir / "fake-ch-run")))
    run, out = run_job(plan, PATH=f"{launch_dir}{os.pathsep}{os.environ['PATH']}")
    assert run.returncode == 0, run.output
    args = (out / "launcher.args").read_bytes().split(b"\0")[:-1]
    assert args == [b"--job-name=ils-pod-main", *(f"--cpu-bind={w}".encode() for w in values)]


# --- restartPolicy, readiness -------------------------------------------------------------------


def restarting(data_root: Path, bin_dir: Path) -> Settings:
    return load_settings(
        None,
        data_root=str(data_root),
        runtime="charliecloud",
        runtime_path=str(bin_dir / "fake-ch-run"),
        images={"img": IMAGE_DIR},
        restart_backoff_seconds=1,
        restart_backoff_max_seconds=1,
    )


def failing(name: str, times: int) -> dict[str, Any]:
    c = probe(name)
    c["env"].append({"name": "ILS_PROBE_FAIL_TIMES", "value": str(times)})
    return c


def test_on_failure_restarts_a_failing_container_counting_restarts_and_keeping_the_last_log(
    bin_dir: Path, data_root: Path
) -> None:
    the_pod = pg.pod("probe", [failing("main", 2)], restartPolicy="OnFailure")
    plan = plan_for(the_pod, restarting(data_root, bin_dir))
    run, out = run_job(plan)
    assert run.returncode == 0, run.output
    containers = Path(plan.pod_dir) / "containers"
    assert (out / "main.runs").read_text() == "3"
    assert (containers / "main.restarts").read_text() == "2\n"
    assert (containers / "main.exit").read_text() == "0\n"
    assert (containers / "main.log").read_text() == "run 3\n"
    assert (containers / "main.previous.log").read_text() == "run 2\n"
    assert not (containers / "main.backoff").exists()
    assert "container main exited with code 1; restart 1 in 1 s" in run.output


def test_fallback_to_logs_gives_each_failed_run_its_log_tail_and_the_restart_a_last_state(
    bin_dir: Path, data_root: Path
) -> None:
    """FallbackToLogsOnError: a run that failed leaves the end of its log as its message, which
    becomes the last state's when the container is restarted; the run that succeeds has none."""
    main = failing("main", 2) | {"terminationMessagePolicy": "FallbackToLogsOnError"}
    the_pod = pg.pod("probe", [main], restartPolicy="OnFailure")
    plan = plan_for(the_pod, restarting(data_root, bin_dir))
    run, _ = run_job(plan)
    assert run.returncode == 0, run.output
    files = read_container(LocalTransport(), plan.pod_dir, "main")
    assert files.exit_code == 0 and files.message is None
    assert files.last is not None
    assert (files.last.exit_code, files.last.message) == (1, "run 2\n")
    assert files.started is not None and files.last.finished is not None
    assert files.last.started is not None and files.last.started <= files.last.finished
    assert files.last.finished <= files.started


@pytest.mark.parametrize("policy", ["File", "FallbackToLogsOnError"])
def test_a_failed_container_has_a_message_only_when_its_policy_falls_back_to_logs(
    bin_dir: Path, data_root: Path, policy: str
) -> None:
    main = failing("main", 1) | {"terminationMessagePolicy": policy}
    plan = plan_for(pg.pod("probe", [main]), restarting(data_root, bin_dir))
    run, _ = run_job(plan)
    assert run.returncode == 1, run.output
    files = read_container(LocalTransport(), plan.pod_dir, "main")
    assert files.exit_code == 1 and files.last is None
    assert files.message == ("run 1\n" if policy == "FallbackToLogsOnError" else None)


def test_the_log_copier_comes_with_the_library_and_indexes_each_chunk(
    bin_dir: Path, data_root: Path
) -> None:
    """No pod directory holds a copy of logpipe.py: ils.sh carries its code to python3, which
    copies the container's output to its log and notes each chunk in the index."""
    the_pod = pg.pod("probe", [failing("main", 1)], restartPolicy="OnFailure")
    plan = plan_for(the_pod, restarting(data_root, bin_dir))
    run, _ = run_job(plan)
    assert run.returncode == 0, run.output
    pod_dir = Path(plan.pod_dir)
    assert not (pod_dir / "logpipe.py").exists()
    containers = pod_dir / "containers"
    for log, text in (("main.previous.log", b"run 1\n"), ("main.log", b"run 2\n")):
        assert (containers / log).read_bytes() == text
        index = (containers / f"{log}.idx").read_bytes()
        assert len(index) == RECORD.size
        offset, at_ns = RECORD.unpack(index)
        assert offset == 0 and abs(at_ns - time.time_ns()) < 600 * 10**9


def test_never_does_not_restart(bin_dir: Path, data_root: Path) -> None:
    plan = plan_for(pg.pod("probe", [failing("main", 1)]), restarting(data_root, bin_dir))
    run, out = run_job(plan)
    assert run.returncode == 1
    assert (out / "main.runs").read_text() == "1"
    assert not (Path(plan.pod_dir) / "containers" / "main.restarts").exists()


def test_init_container_is_retried_until_it_succeeds_then_the_containers_run(
    bin_dir: Path, data_root: Path
) -> None:
    the_pod = pg.pod("probe", [probe("main")], init=[failing("setup", 1)], restartPolicy="Always")
    # Always would restart "main" forever: stop the job once main has run twice.
    plan = plan_for(the_pod, restarting(data_root, bin_dir))
    root = lay_out(plan)
    out = root / "probe"
    out.mkdir()
    with (root / "job.out").open("wb") as sink:
        proc = subprocess.Popen(
            ["bash", "job.sh"],
            cwd=root,
            env={**os.environ, "ILS_PROBE_OUT": str(out)},
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not (out / "main.runs").exists() or (out / "main.runs").read_text() < "2":
            assert time.monotonic() < deadline, (root / "job.out").read_text()
            time.sleep(0.1)
        # What scancel --signal=TERM --full does: every process of the job gets SIGTERM, and
        # the job stops restarting its containers.
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, 143), (root / "job.out").read_text()
    containers = root / "containers"
    assert (out / "setup.runs").read_text() == "2"
    assert (containers / "setup.restarts").read_text() == "1\n"
    assert (containers / "main.restarts").read_text() >= "1\n"


def test_readiness_probe_writes_the_ready_file(bin_dir: Path, data_root: Path) -> None:
    c = probe("main")
    c["command"] = ["run", "main"]
    c["env"].append({"name": "ILS_PROBE_EXIT", "value": "0"})
    # A probe that fails: nothing listens on port 9 of this host (discard service is off).
    c["readinessProbe"] = {"tcpSocket": {"port": 9}, "periodSeconds": 1, "failureThreshold": 1}
    plan = plan_for(pg.pod("probe", [c]), restarting(data_root, bin_dir))
    run, _ = run_job(plan)
    assert run.returncode == 0, run.output
    # The container ended: whatever the probe said, it is not ready any more.
    assert (Path(plan.pod_dir) / "containers" / "main.ready").read_text() == "false\n"


@pytest.mark.parametrize(
    ("child", "expected"),
    [
        ("sleep 0.1; exit 0", "0"),  # it ends while the trap runs: its own status, not 138
        ("sleep 0.1; exit 7", "7"),
        ("sleep 1; exit 0", "0"),  # it outlives the trap: waited for
        ("sleep 0.1; kill -KILL $BASHPID", "137"),  # killed: that is its status
    ],
)
def test_a_wait_cut_short_by_a_trapped_signal_gives_the_child_s_own_status(
    child: str, expected: str
) -> None:
    script = (
        'set -o nounset -o pipefail; . "$0"\n'
        "trap 'sleep 0.4' USR1\n"
        f"( {child} ) & p=$!\n"
        "( sleep 0.05; kill -USR1 $$ ) &\n"
        'ils_wait "$p"; echo "$?"\n'
    )
    run = subprocess.run(
        ["bash", "-c", script, str(LIBRARY_PATH)], capture_output=True, text=True, timeout=30
    )
    assert run.stdout == f"{expected}\n", run.stderr


def test_a_container_stopped_by_its_liveness_probe_leaves_no_killer_behind(
    bin_dir: Path, data_root: Path
) -> None:
    """The SIGKILL that follows a probe's SIGTERM after the grace period is called off when the
    container ends: left to run, it would signal a process group id reused by then."""
    c = probe("main")
    c["env"].append({"name": "ILS_PROBE_SLEEP", "value": "60"})  # ends at SIGTERM
    c["livenessProbe"] = {
        "tcpSocket": {"port": 9},  # nothing listens there: the probe fails
        "initialDelaySeconds": 0,
        "periodSeconds": 1,
        "timeoutSeconds": 1,
        "successThreshold": 1,
        "failureThreshold": 1,
    }
    the_pod = pg.pod("probe", [c], terminationGracePeriodSeconds=30)
    plan = plan_for(the_pod, charliecloud(data_root, str(bin_dir / "fake-ch-run")))
    run, out = run_job(plan)
    assert "failed its liveness probe 1 times: stopping it" in run.output, run.output
    key = f"ILS_PROBE_OUT={out}".encode()
    left = []
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if key in environ.split(b"\0") and state != "Z":
            left.append((entry.name, (entry / "cmdline").read_bytes()))
    assert left == []


@settings(max_examples=10, deadline=None)
@given(st.lists(ARG, max_size=4))
def test_hook_command_reaches_the_runtime_byte_exact(
    bin_dir: Path, data_root: Path, words: list[str]
) -> None:
    c = probe("main")
    c["env"].append({"name": "ILS_PROBE_SLEEP", "value": "0.5"})
    c["lifecycle"] = {"postStart": {"exec": {"command": ["ils-hook", *words]}}}
    plan = plan_for(pg.pod("probe", [c]), charliecloud(data_root, str(bin_dir / "fake-ch-run")))
    run, out = run_job(plan)
    assert run.returncode == 0, run.output
    record = json.loads((out / "main.hook.json").read_text())
    assert [bytes.fromhex(a) for a in record["command"]] == [
        b"ils-hook",
        *(w.encode() for w in words),
    ]
    assert bytes.fromhex(record["env"][MARKER.encode().hex()]) == b"main"


def test_http_readiness_probe_sends_the_probes_headers(bin_dir: Path, data_root: Path) -> None:
    import http.server
    import threading

    seen_headers: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen_headers.append(self.headers.get("X-Probe"))
            self.send_response(200 if self.path == "/ready" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        c = probe("main")
        c["env"].append({"name": "ILS_PROBE_SLEEP", "value": "2"})
        c["readinessProbe"] = {
            "httpGet": {
                "path": "/ready",
                "port": server.server_address[1],
                "httpHeaders": [{"name": "X-Probe", "value": "yes, it's me"}],
            },
            "periodSeconds": 1,
        }
        plan = plan_for(pg.pod("probe", [c]), restarting(data_root, bin_dir))
        run, _ = run_job(plan)
    finally:
        server.shutdown()
    assert run.returncode == 0, run.output
    assert seen_headers and set(seen_headers) == {"yes, it's me"}


# --- Enroot's create mode (enroot_create_dir) ---------------------------------------------------

# create --name NAME IMAGE makes $ENROOT_DATA_PATH/NAME (refused when it exists, as by enroot) and
# records "NAME IMAGE"; start [--mount X|--env X]... NAME COMMAND... fails unless NAME was
# created, else records "NAME" and runs COMMAND. ILS_FAIL_CREATE makes every create fail.
ENROOT_STAND_IN = """#!/bin/bash
case $1 in
  create)
    [ "$2" = --name ] && [ "$#" -eq 4 ] || { echo "usage: create --name NAME IMAGE" >&2; exit 2; }
    [ -z "${ILS_FAIL_CREATE:-}" ] || { echo "[ERROR] Invalid image format: $4" >&2; exit 1; }
    mkdir -- "$ENROOT_DATA_PATH/$3" || exit 1
    printf '%s %s\\n' "$3" "$4" >> "$ILS_PROBE_OUT/creates"
    ;;
  start)
    shift
    while [ "$#" -gt 0 ]; do
      case $1 in
        --mount|--env) shift 2 ;;
        -*) echo "unexpected option $1" >&2; exit 2 ;;
        *) break ;;
      esac
    done
    [ -d "$ENROOT_DATA_PATH/$1" ] || { echo "[ERROR] No such file or directory: $1" >&2; exit 1; }
    printf '%s\\n' "$1" >> "$ILS_PROBE_OUT/starts"
    shift
    exec "$@"
    ;;
  *) exit 2 ;;
esac
"""

IMAGE_A = "/images/a.sqsh"
IMAGE_B = "/images/b.sqsh"


def enroot_create(data_root: Path, tmp_path: Path) -> Settings:
    exe = tmp_path / "fake-enroot"
    exe.write_text(ENROOT_STAND_IN)
    exe.chmod(0o755)
    return load_settings(
        None,
        data_root=str(data_root),
        runtime="enroot",
        runtime_path=str(exe),
        images={"a": IMAGE_A, "b": IMAGE_B},
        enroot_create_dir=str(_usable(tmp_path / "node-local")),
    )


def recording(name: str, image: str, **fields: Any) -> dict[str, Any]:
    """A container that writes its name to $ILS_PROBE_OUT/ran."""
    script = escape('echo "$0" >> "$ILS_PROBE_OUT/ran"')
    return pg.container(name, command=["sh", "-c", script, name], image=image, **fields)


def test_enroot_create_unpacks_each_image_once_and_the_containers_start_its_name(
    data_root: Path, tmp_path: Path
) -> None:
    s = enroot_create(data_root, tmp_path)
    # The postStart hook runs in the container's image too; main waits for it.
    wait = escape(
        'i=0; while [ ! -e "$ILS_PROBE_OUT/hooked" ] && [ "$i" -lt 100 ]; do'
        ' sleep 0.05; i=$((i + 1)); done; echo "$0" >> "$ILS_PROBE_OUT/ran"'
    )
    hook = ["sh", "-c", 'touch "$ILS_PROBE_OUT/hooked"']  # not $(VAR)-expanded by Kubernetes
    main_c = pg.container(
        "main",
        command=["sh", "-c", wait, "main"],
        image="b",
        lifecycle={"postStart": {"exec": {"command": hook}}},
    )
    the_pod = pg.pod("enroot", [main_c, recording("side", "a")], init=[recording("setup", "a")])
    plan = plan_for(the_pod, s)
    data_path = Path(f"{s.enroot_create_dir}/interlink-slurm-{the_pod['metadata']['uid']}")
    assert plan.enroot_data_path == str(data_path)
    run, out = run_job(plan)
    assert run.returncode == 0, run.output
    # Distinct images, named in order of first use (init containers first).
    assert (out / "creates").read_text() == f"ils-0 {IMAGE_A}\nils-1 {IMAGE_B}\n"
    assert (out / "hooked").exists()
    ran = (out / "ran").read_text().split()
    assert ran[0] == "setup" and sorted(ran[1:]) == ["main", "side"]
    # setup and side from ils-0, main and its hook from ils-1.
    assert sorted((out / "starts").read_text().split()) == ["ils-0", "ils-0", "ils-1", "ils-1"]
    assert not data_path.exists(), "the job left its ENROOT_DATA_PATH behind"
    assert data_path.parent.exists()


def test_enroot_create_removes_what_a_killed_run_left(data_root: Path, tmp_path: Path) -> None:
    s = enroot_create(data_root, tmp_path)
    the_pod = pg.pod("enroot", [recording("main", "a")])
    plan = plan_for(the_pod, s)
    # A requeued job on the same node, after a run that never reached its cleanup; an unpacked
    # image may hold directories without write permission.
    stale = Path(f"{plan.enroot_data_path}/ils-0/usr/lib/x")
    stale.mkdir(parents=True)
    (stale / "f").write_text("left")
    stale.chmod(0o555)
    run, out = run_job(plan)
    assert run.returncode == 0, run.output
    assert (out / "ran").read_text() == "main\n"
    assert not Path(str(plan.enroot_data_path)).exists()


def test_enroot_create_failure_ends_the_job_before_any_container(
    data_root: Path, tmp_path: Path
) -> None:
    s = enroot_create(data_root, tmp_path)
    the_pod = pg.pod("enroot", [recording("main", "b")], init=[recording("setup", "a")])
    plan = plan_for(the_pod, s)
    run, out = run_job(plan, ILS_FAIL_CREATE="1")
    assert run.returncode != 0
    assert f"interlink-slurm: cannot unpack {IMAGE_A}\n" in run.output
    assert f"cannot unpack {IMAGE_B}" not in run.output
    assert not (out / "ran").exists() and not (out / "starts").exists()
    assert not (Path(plan.pod_dir) / "containers" / "setup.started").exists()
    assert not Path(str(plan.enroot_data_path)).exists()


def test_tmp_directories_of_jobs_killed_before_their_cleanup_are_swept(tmp_path: Path) -> None:
    """A job killed (SIGKILL) before its EXIT trap leaves its containers' /tmp on the node: the
    next job there removes those of jobs with no process left, and only those."""
    library = Path(interlink_slurm.__file__).parent / "jobscript" / "ils.sh"
    # ...4 is dead although ...42 (which starts alike) lives; ...42-<uid> is a group member's.
    j = FAKE_JOBS
    names = (
        f"interlink-slurm-{j}4",
        f"interlink-slurm-{j}41",
        f"interlink-slurm-{j}42",
        f"interlink-slurm-{j}42-u1",
    )
    for name in (*names, "interlink-slurm-pid7", "other"):
        (tmp_path / name / "main").mkdir(parents=True)
    # Job ...42 still has a process on this node.
    alive = subprocess.Popen(
        ["sleep", "60"], env={**os.environ, "SLURM_JOB_ID": f"{j}42"}, stdin=subprocess.DEVNULL
    )
    try:
        run = subprocess.run(
            [
                "bash",
                "-c",
                f'set -o nounset && . "$0" && ils_tmp_sweep {shlex.quote(str(tmp_path))}',
                library,
            ],
            env={**os.environ, "SLURM_JOB_ID": f"{j}43"},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        alive.kill()
        alive.wait()
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"interlink-slurm-{j}42",
        f"interlink-slurm-{j}42-u1",
        "interlink-slurm-pid7",
        "other",
    ]


# --- the library's helpers that spare the job a process -----------------------------------------

LIBRARY_PATH = Path(interlink_slurm.__file__).parent / "jobscript" / "ils.sh"


def in_library(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``code`` run by bash in ``cwd`` after sourcing the library, as job.sh does."""
    return subprocess.run(
        ["bash", "-c", f'set -o nounset; . "$0" || exit 1\n{code}', str(LIBRARY_PATH)],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


RFC3339_NANOSECONDS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.(\d{9})Z")


@pytest.mark.parametrize("clock", ["EPOCHREALTIME", "date"])
def test_ils_now_writes_utc_with_nanoseconds_that_the_plugin_reads_back(
    clock: str, tmp_path: Path
) -> None:
    """Bash 5's own clock (no process) and date (bash 4, or EPOCHREALTIME unset) print the same
    format, in UTC whatever the job's TZ, which stays the containers' (date +%Z after it)."""
    (tmp_path / "containers").mkdir()
    drop = "unset EPOCHREALTIME" if clock == "date" else ":"
    before = datetime.now(UTC)
    run = in_library(
        f"{drop}\n"
        'ils_now now && ils_put containers/main.started "$now" && printf \'%s\\n\' "$now"\n'
        "ils_now\n"
        "date +%Z",
        tmp_path,
        TZ="EST5",
    )
    after = datetime.now(UTC)
    assert run.returncode == 0, run.stderr
    into_var, printed, zone = run.stdout.splitlines()
    for stamp in (into_var, printed):
        match = RFC3339_NANOSECONDS.fullmatch(stamp)
        assert match, stamp
        if clock == "EPOCHREALTIME":
            assert match[1].endswith("000"), stamp  # microseconds, padded
    assert zone == "EST"
    started = read_container(LocalTransport(), str(tmp_path), "main").started
    assert started is not None
    assert started.utcoffset() == timedelta(0)
    assert started.microsecond == int(into_var[20:26])
    assert before - timedelta(seconds=1) < started <= after
    assert into_var <= printed


def test_ils_now_on_bash_5_runs_no_process(tmp_path: Path) -> None:
    """No date: on a PATH where there is none, the time is still told."""
    run = in_library('PATH=/nonexistent; ils_now now; echo "$now"', tmp_path)
    assert run.returncode == 0, run.stderr
    assert RFC3339_NANOSECONDS.fullmatch(run.stdout.strip()), run.stdout


# What a file may hold where the job reads a count (job.runs, containers/<name>.restarts):
# None for no file, a directory for one that cannot be read as a file.
COUNT_FILES: list[bytes | None] = [
    None,
    b"",
    b"3",
    b"3\n",
    b"3\n\n",
    b"\n5\n",
    b" 4 \n",
    b"1\n2\n",
    b"abc",
    b"x y\n",
    b"2+2",
]


@pytest.mark.parametrize("content", [*COUNT_FILES, "directory"])
def test_ils_read_gives_what_cat_gave(content: bytes | str | None, tmp_path: Path) -> None:
    """ils_read VAR FILE 0 holds the very text $(cat FILE 2>/dev/null || echo 0) did: the
    counts the job computes from it stay what they were, garbage included."""
    f = tmp_path / "job.runs"
    if content == "directory":
        f.mkdir()
    elif isinstance(content, bytes):
        f.write_bytes(content)
    run = in_library(
        "ils_read runs job.runs 0\n"
        "old=$(cat job.runs 2>/dev/null || echo 0)\n"
        'printf "%s\\0" "$runs" "$old"',
        tmp_path,
    )
    assert run.returncode == 0, run.stderr
    new, old, _ = run.stdout.split("\0")
    assert new == old
    assert run.stderr == ""


@pytest.mark.parametrize(
    ("content", "runs"),
    [(None, "1"), (b"", "1"), (b"\n", "1"), (b"3\n", "4"), (b" 4 \n", "5"), (b"08\n", "9")],
)
def test_ils_start_counts_the_jobs_runs(content: bytes | None, runs: str, tmp_path: Path) -> None:
    if content is not None:
        (tmp_path / "job.runs").write_bytes(content)
    run = in_library('ils_start ns/pod && echo "$ILS_RUN"', tmp_path, SLURMD_NODENAME="n1")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == runs
    assert (tmp_path / "job.runs").read_text() == f"{runs}\n"


# Counts no job wrote: bash arithmetic would evaluate them, and run the command substitution in
# an array subscript (BASH_VERSINFO is set, so nounset does not stop it first).
NOT_COUNTS = [
    b"abc\n",
    b"1\n2\n",
    b"2+2",
    b"-1",
    b"1" * 19,
    b"BASH_VERSINFO[$(touch ran)0]\n",
    b"x[$(touch ran)]",
    b"$(touch ran)",
]


@pytest.mark.parametrize("content", NOT_COUNTS)
def test_a_job_runs_that_is_no_count_stops_the_job_and_runs_nothing(
    content: bytes, tmp_path: Path
) -> None:
    (tmp_path / "job.runs").write_bytes(content)
    run = in_library("ils_start ns/pod; echo survived", tmp_path, SLURMD_NODENAME="n1")
    assert run.returncode == 1
    assert "interlink-slurm: job.runs holds no count: the job stops" in run.stderr
    assert "survived" not in run.stdout
    assert not (tmp_path / "ran").exists()
    assert (tmp_path / "job.runs").read_bytes() == content


@pytest.mark.parametrize("content", NOT_COUNTS)
def test_a_restarts_file_that_is_no_count_runs_nothing(content: bytes, tmp_path: Path) -> None:
    (tmp_path / "main.restarts").write_bytes(content)
    run = in_library(
        'ils_count n main.restarts; echo "survived $n"; r=$(( n + 1 )); echo "$r"', tmp_path
    )
    assert run.returncode == 1
    assert "interlink-slurm: main.restarts holds no count: the job stops" in run.stderr
    assert "survived" not in run.stdout
    assert not (tmp_path / "ran").exists()


def test_ils_which_finds_what_command_v_found(tmp_path: Path) -> None:
    """The runtime, a launcher, an exec probe's command: the path on the job's PATH, else the
    name as given, and the status of command -v; with hashing off too."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    (bin_dir / "plain").write_text("not executable\n")
    (bin_dir / "dir-tool").mkdir()
    names = [
        "tool",
        str(tool),
        "./bin/tool",
        "plain",
        str(bin_dir / "plain"),
        "dir-tool",
        str(bin_dir / "dir-tool"),
        "missing",
        "/nonexistent/tool",
        "a func",
        "myfunc",
        "echo",
        "if",
        "",
    ]
    code = ["myfunc() { :; }"]
    for hashing in ("-h", "+h"):
        code.append(f"set {hashing}")
        for n in names:
            q = shlex.quote(n)
            code += [
                f"ils_which v {q}; new=$v:$?",
                f"v=$(command -v -- {q}); s=$?; [ $s -eq 0 ] || v={q}; old=$v:$s",
                'printf "%s\\0%s\\0" "$new" "$old"',
            ]
    run = in_library("\n".join(code), tmp_path, PATH=f"{bin_dir}:/usr/bin:/bin")
    assert run.returncode == 0, run.stderr
    words = run.stdout.split("\0")[:-1]
    pairs = list(zip(words[::2], words[1::2], strict=True))
    assert len(pairs) == 2 * len(names)
    for (new, old), name in zip(pairs, names * 2, strict=True):
        assert new == old, name
    assert pairs[0] == (f"{tool}:0", f"{tool}:0")
    assert pairs[names.index("missing")][0] == "missing:1"


def test_ils_which_sets_an_array_element_of_the_caller(tmp_path: Path) -> None:
    """As ils_container finds its launcher: launch[0] in a local array of the caller."""
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    run = in_library(
        "f() {\n"
        "  local -a launch=(tool -n 2)\n"
        '  ils_which "launch[0]" "${launch[0]}"\n'
        '  printf "%s|" "${launch[@]}"\n'
        "}\n"
        "f",
        tmp_path,
        PATH=f"{tmp_path}:/usr/bin:/bin",
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"{tool}|-n|2|"


def test_ils_rm_runs_rm_only_for_what_is_there(tmp_path: Path) -> None:
    """Nothing there: no process (no rm on this PATH) and status 0; else rm with the flags."""
    (tmp_path / "file").write_text("")
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    absent = in_library("PATH=/nonexistent; ils_rm -f gone also-gone", tmp_path)
    assert absent.returncode == 0, absent.stderr
    assert absent.stderr == ""
    present = in_library("ils_rm -f gone file dangling && ils_rm -rf tree", tmp_path)
    assert present.returncode == 0, present.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    (tmp_path / "dir").mkdir()
    refused = in_library("ils_rm -f dir", tmp_path)  # as rm -f refuses a directory
    assert refused.returncode != 0
    assert (tmp_path / "dir").is_dir()


def test_a_requeued_run_clears_the_last_runs_states_before_it_counts_itself(
    tmp_path: Path,
) -> None:
    """When job.runs says run 2, the files of run 1's containers are gone already: a state read
    never pairs the new run's count with the old run's exit code. A container whose end run 1
    wrote has that run as its last state, with its message; one that did not end there (its
    node failed) keeps the last state it had."""
    (tmp_path / "job.runs").write_text("1\n")
    containers = tmp_path / "containers"
    containers.mkdir()
    when = "2026-12-02T11:00:00.123456789Z"
    for suffix, value in (("started", when), ("finished", when), ("exit", "3")):
        (containers / f"main.{suffix}").write_text(value + "\n")
    (containers / "main.message").write_text("ZmFpbGVk\n")
    (containers / "main.log").write_text("run 1\n")
    (containers / "side.started").write_text(when + "\n")  # killed with its node: no end
    (containers / "side.last").write_text(f"1 {when} {when}\n")
    # mv runs as a process: the one that moves job.runs into place reports what it sees.
    spy = tmp_path / "bin"
    spy.mkdir()
    (spy / "mv").write_text(
        '#!/bin/bash\nif [ "${@: -1}" = job.runs ]; then ls containers > seen; fi\n'
        'if [ "${@: -1}" = containers/main.last ]; then ls containers > seen-last; fi\n'
        'exec /bin/mv "$@"\n'
    )
    (spy / "mv").chmod(0o755)
    run = in_library(
        "ils_start ns/pod",
        tmp_path,
        SLURMD_NODENAME="n1",
        PATH=f"{spy}:{os.environ['PATH']}",
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "job.runs").read_text() == "2\n"
    assert (tmp_path / "seen").read_text().split() == [
        "main.last",
        "main.last-message",
        "main.previous.log",
        "side.last",
    ]
    # When run 1 becomes the last state, its states are gone: never both at once.
    assert "main.exit" not in (tmp_path / "seen-last").read_text().split()
    files = read_container(LocalTransport(), str(tmp_path), "main")
    assert files.started is None and files.last is not None
    assert (files.last.exit_code, files.last.message) == (3, "failed")
    assert files.last.started == files.last.finished is not None
    side = read_container(LocalTransport(), str(tmp_path), "side").last
    assert side is not None and side.exit_code == 1


@pytest.mark.parametrize(
    ("log", "kept"),
    [
        (b"".join(b"line %d\n" % i for i in range(100)), 80),  # the last 80 lines
        (b"x" * 999 + b"\n" + b"y" * 1500 + b"\n" + b"z" * 1500 + b"\n", None),  # 2048 bytes
        (b"\xff\x00 no newline at the end", None),
    ],
    ids=["lines", "bytes", "binary"],
)
def test_ils_message_keeps_the_log_tail_the_kubelet_keeps(
    tmp_path: Path, log: bytes, kept: int | None
) -> None:
    (tmp_path / "containers").mkdir()
    (tmp_path / "containers" / "c.log").write_bytes(log)
    run = in_library("ils_message c 2 FallbackToLogsOnError", tmp_path)
    assert run.returncode == 0, run.stderr
    message = base64.b64decode((tmp_path / "containers" / "c.message").read_bytes())
    tail = b"".join(log.splitlines(keepends=True)[-kept:]) if kept else log
    assert message == tail[-2048:]


@pytest.mark.parametrize(
    "call",
    [
        "ils_message c 0 FallbackToLogsOnError",
        "ils_message c 1 File",
        "ils_message d 1 FallbackToLogsOnError",
    ],
)
def test_ils_message_leaves_none_for_a_success_a_file_policy_or_an_empty_log(
    tmp_path: Path, call: str
) -> None:
    """And removes the message an earlier run of the container left."""
    containers = tmp_path / "containers"
    containers.mkdir()
    (containers / "c.log").write_text("out\n")
    (containers / "d.log").write_text("")
    for name in ("c", "d"):
        (containers / f"{name}.message").write_text("b2xk\n")
    run = in_library(call, tmp_path)
    assert run.returncode == 0, run.stderr
    assert not (containers / f"{call.split()[1]}.message").exists()
