"""The Dockerfile's build context and instructions (docker cannot run here), and its health check
script against a real `interlink-slurm serve`."""

from __future__ import annotations

import fnmatch
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.deploy.helpers import DEPLOY, REPO

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"
HEALTHCHECK = DEPLOY / "docker" / "healthcheck.py"
EXE = str(Path(sys.executable).parent / "interlink-slurm")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "a line continuation runs off the end of the Dockerfile"
    return out


def stages(instrs: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instrs:
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def copy_sources(args: str) -> tuple[list[str], str, bool]:
    """Sources, destination and whether it copies from another stage."""
    words = shlex.split(args)
    from_stage = any(w.startswith("--from=") for w in words)
    words = [w for w in words if not w.startswith("--")]
    return words[:-1], words[-1], from_stage


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern decides; '!' re-includes."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, pat) for p in prefixes) or (
            pat.startswith("**/") and fnmatch.fnmatchcase(parts[-1], pat[3:])
        ):
            result = not negate
    return result


def test_every_copy_source_exists_in_the_build_context_and_is_not_ignored() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = 0
    for word, args in instructions(DOCKERFILE):
        if word not in ("COPY", "ADD"):
            continue
        assert word == "COPY", "ADD fetches and unpacks; COPY is all this image needs"
        sources, _, from_stage = copy_sources(args)
        if from_stage:
            continue
        for src in sources:
            assert (REPO / src).exists(), f"COPY {src}: not in the build context (repo root)"
            assert not ignored(src.rstrip("/"), patterns), f"COPY {src}: excluded by .dockerignore"
            copied += 1
    assert copied >= 4
    # The rest of the checkout stays out of the context (the venv, the dev cluster, tests).
    for path in (".venv/bin/python", ".cluster/slurm.conf", "tests/unit", "deploy/e2e/scenarios"):
        assert ignored(path, patterns), f"{path} would be sent to the docker daemon"


def test_pyproject_readme_is_copied_for_the_build() -> None:
    # setuptools reads `readme` while building the wheel.
    copied = " ".join(a for w, a in instructions(DOCKERFILE) if w == "COPY")
    assert "README.md" in copied and "pyproject.toml" in copied and "interlink_slurm" in copied


def test_base_image_is_pinned_small_and_shared_by_both_stages() -> None:
    instrs = instructions(DOCKERFILE)
    args = dict(a.split("=", 1) for w, a in instrs if w == "ARG" and "=" in a)
    image = args["PYTHON_IMAGE"]
    assert image.startswith("python:3.11") and "slim" in image and ":latest" not in image
    froms = [a.split()[0] for w, a in instrs if w == "FROM"]
    assert froms == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]


def test_final_stage_runs_as_a_non_root_user_with_a_healthcheck() -> None:
    final = stages(instructions(DOCKERFILE))[-1]
    users = [a for w, a in final if w == "USER"]
    assert users, "the final stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert any(w == "RUN" and f"--uid {user}" in a for w, a in final), "the user is created"

    checks = [a for w, a in final if w == "HEALTHCHECK"]
    assert len(checks) == 1
    cmd = checks[0].split("CMD", 1)[1].strip()
    argv = yaml.safe_load(cmd)  # exec form: a JSON array
    assert argv[0] == "python3" and argv[1] == "/opt/interlink-slurm/healthcheck.py"
    copied_to = [copy_sources(a)[1] for w, a in final if w == "COPY"]
    assert argv[1] in copied_to

    assert ("EXPOSE", "4000") in final
    assert ("ENTRYPOINT", '["interlink-slurm"]') in final
    assert ("CMD", '["serve"]') in final
    env = " ".join(a for w, a in final if w == "ENV")
    assert "INTERLINK_SLURM_CONFIG=/etc/interlink-slurm/config.yaml" in env


def test_runtime_stage_has_no_compiler_or_pip() -> None:
    build, final = stages(instructions(DOCKERFILE))
    assert any("pip install" in a for w, a in build if w == "RUN")
    assert not any("pip install" in a or "apt-get" in a for w, a in final if w == "RUN")
    assert any("pip uninstall --yes pip" in a for w, a in build if w == "RUN")


# --- the health check script, against the real service ------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [EXE, "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "USER": os.environ.get("USER", "root")},
    )


def healthcheck(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)],
        env={**os.environ, "INTERLINK_SLURM_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=30,
    )


def wait_healthy(config: Path, proc: subprocess.Popen[bytes]) -> subprocess.CompletedProcess[str]:
    deadline = time.monotonic() + 30
    while True:
        r = healthcheck(config)
        if r.returncode == 0 or time.monotonic() > deadline or proc.poll() is not None:
            return r
        time.sleep(0.2)


@pytest.fixture
def stopped() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=30)


@pytest.mark.parametrize("listen", ["tcp", "wildcard", "unix"])
def test_healthcheck_follows_listen_and_fails_when_the_service_is_down(
    tmp_path: Path, listen: str, stopped: list[subprocess.Popen[bytes]], socket_dir: Path
) -> None:
    address = {
        "tcp": f"127.0.0.1:{free_port()}",
        "wildcard": f"0.0.0.0:{free_port()}",
        "unix": f"unix://{socket_dir}/plugin.sock",
    }[listen]
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": address,
                "data_root": str(tmp_path / "data"),
                "runtime": "charliecloud",
                # No Slurm is needed for /healthz: point the commands at an empty directory.
                "slurm_bin_dir": str(tmp_path / "no-slurm"),
            }
        )
    )
    down = healthcheck(config)
    assert down.returncode == 1 and "unhealthy" in down.stderr

    proc = serve(config)
    stopped.append(proc)
    up = wait_healthy(config, proc)
    assert up.returncode == 0, up.stderr

    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert healthcheck(config).returncode == 1


def test_healthcheck_reports_a_broken_configuration(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("listen: 127.0.0.1:1\n")  # no data_root
    r = healthcheck(config)
    assert r.returncode == 1 and "data_root" in r.stderr
