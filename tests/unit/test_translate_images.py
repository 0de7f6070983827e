"""Registry images converted once into a shared cache (image_cache_dir), with pull secrets."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from interlink_slurm.config import ConfigError, load_settings
from interlink_slurm.translate.images import cached_sif, credentials, registry_of
from interlink_slurm.translate.plan import JobPlan
from interlink_slurm.translate.pod import build_plan
from interlink_slurm.translate.script import render_script
from interlink_slurm.wire import RetrievedPodData, Secret
from tests import podgen as pg
from tests.unit.golden import check_golden
from tests.unit.test_translate import files, main, plan_of, pod_of
from tests.unit.test_translate import settings as make_settings

CACHE = "/shared/sif-cache"


def docker_config(registry: str, user: str, password: str, *, as_auth: bool = False) -> dict:
    entry: dict[str, str] = (
        {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
        if as_auth
        else {"username": user, "password": password}
    )
    return {
        "metadata": {"name": "regcred", "namespace": "default"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {
            ".dockerconfigjson": base64.b64encode(
                json.dumps({"auths": {registry: entry}}).encode()
            ).decode()
        },
    }


def cached(**kw: Any) -> Any:
    return make_settings(image_cache_dir=CACHE, **kw)


def test_registry_image_runs_from_the_cache_and_is_pulled_first() -> None:
    plan = plan_of(pod_of(main(image="python:3.12")), cached())
    sif = cached_sif(CACHE, "docker://python:3.12")
    assert plan.containers[0].image == sif
    assert sif.startswith(f"{CACHE}/python_3.12-") and sif.endswith(".sif")
    assert plan.image_pulls == ((sif, "docker://python:3.12", None),)
    script = render_script(plan)
    assert f"ils_pull apptainer {sif} docker://python:3.12 ||" in script
    assert script.index("ils_pull apptainer") < script.index("ils_container main")
    assert plan.runtime_argv["main"][-2:] == (sif, "true")


def test_one_pull_per_image_whatever_the_number_of_containers() -> None:
    p = pod_of(main(image="python:3.12"), pg.container("side", "pass", image="python:3.12"))
    assert len(plan_of(p, cached()).image_pulls) == 1


def test_mapped_and_local_images_are_not_pulled() -> None:
    s = cached(images={"python:3.12": "/sif/python.sif"})
    p = pod_of(main(image="python:3.12"), pg.container("side", "pass", image="/abs/x.sif"))
    plan = plan_of(p, s)
    assert plan.image_pulls == ()
    assert "ils_pull" not in render_script(plan)


def test_cache_key_is_the_exact_reference() -> None:
    a, b = cached_sif(CACHE, "docker://python:3.12"), cached_sif(CACHE, "docker://python:3.13")
    assert a != b and a == cached_sif(CACHE, "docker://python:3.12")
    weird = cached_sif(CACHE, "docker://reg.example:5000/a/b@sha256:" + "0" * 64)
    assert "/" not in weird.removeprefix(CACHE + "/") and ":" not in weird


@pytest.mark.parametrize(
    ("source", "registry"),
    [
        ("docker://python:3.12", "docker.io"),
        ("docker://library/python", "docker.io"),
        ("docker://nvcr.io/nvidia/pytorch:24.05-py3", "nvcr.io"),
        ("docker://localhost/x", "localhost"),
        ("docker://reg:5000/x", "reg:5000"),
    ],
)
def test_registry_of_a_reference(source: str, registry: str) -> None:
    assert registry_of(source) == registry


@pytest.mark.parametrize("as_auth", [False, True])
def test_image_pull_secret_becomes_a_private_credentials_file(as_auth: bool) -> None:
    p = pod_of(
        main(image="nvcr.io/nvidia/pytorch:24.05-py3"), imagePullSecrets=[{"name": "regcred"}]
    )
    secret = docker_config("https://nvcr.io", "$oauthtoken", "s3cr3t pass", as_auth=as_auth)
    plan = plan_of(p, cached(), secrets=[secret])
    [(_, _, auth)] = plan.image_pulls
    assert auth is not None and auth.startswith("pull/")
    f = files(plan)[auth]
    assert f.mode == 0o600
    assert (
        f.content
        == b"APPTAINER_DOCKER_USERNAME=$oauthtoken\0APPTAINER_DOCKER_PASSWORD=s3cr3t pass\0"
    )
    assert "s3cr3t" not in render_script(plan)


def test_pull_secret_for_another_registry_or_not_named_is_not_used() -> None:
    secret = docker_config("ghcr.io", "u", "p")
    p = pod_of(main(image="nvcr.io/x:1"), imagePullSecrets=[{"name": "regcred"}])
    assert plan_of(p, cached(), secrets=[secret]).image_pulls[0][2] is None
    p = pod_of(main(image="ghcr.io/x:1"))  # the pod does not name the secret
    assert plan_of(p, cached(), secrets=[secret]).image_pulls[0][2] is None


def test_credentials_ignore_malformed_secrets() -> None:
    bad = Secret.model_validate(
        {"metadata": {"name": "x"}, "data": {".dockerconfigjson": "bm90IGpzb24="}}
    )
    assert credentials([bad], "docker.io") is None


def test_singularity_credentials_use_its_own_variables() -> None:
    p = pod_of(main(image="ghcr.io/x:1"), imagePullSecrets=[{"name": "regcred"}])
    plan = plan_of(p, cached(runtime="singularity"), secrets=[docker_config("ghcr.io", "u", "p")])
    [(_, _, auth)] = plan.image_pulls
    assert files(plan)[auth].content.startswith(b"SINGULARITY_DOCKER_USERNAME=u\0")


def test_image_cache_is_for_apptainer_and_singularity_only() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, data_root="/d", runtime="charliecloud", image_cache_dir="/c")
    assert "image_cache_dir" in str(info.value)


# --- golden, and the pull for real with a stand-in apptainer -----------------------------------

GOLDEN_UID = "77777777-8888-4999-8aaa-bbbbbbbbbbbb"


@pytest.mark.parametrize("runtime", ["apptainer", "singularity"])
def test_cached_pull_script_matches_golden(runtime: str) -> None:
    p = pg.pod(
        "pulled",
        [pg.container("main", "print(1)", image="nvcr.io/nvidia/pytorch:24.05-py3")],
        uid=GOLDEN_UID,
        imagePullSecrets=[{"name": "regcred"}],
        annotations={"slurm-job.vk.io/pre-exec": "export https_proxy=http://proxy:3128"},
    )
    data = RetrievedPodData.model_validate(
        pg.retrieved(p, secrets=[docker_config("nvcr.io", "u", "p")])
    )
    s = cached(runtime=runtime)
    plan = build_plan(data, s, f"/data/ils/pods/{GOLDEN_UID}")
    check_golden(f"pulled.{runtime}.sh", render_script(plan))


FAKE_APPTAINER = """#!{python}
# "apptainer pull --force DEST SOURCE": counts pulls, writes DEST slowly; "exec ...": runs.
import os, sys, time
if sys.argv[1] == "pull":
    with open(os.environ["PULL_COUNT"], "a") as f:
        f.write(sys.argv[-1] + " " + os.environ.get("APPTAINER_DOCKER_USERNAME", "-") + "\\n")
    time.sleep(0.5)
    with open(sys.argv[-2], "w") as f:
        f.write("SIF")
    sys.exit(0)
sys.exit(0)
"""


def lay_out(plan: JobPlan) -> Path:
    root = Path(plan.pod_dir)
    root.mkdir(parents=True)
    for d in plan.dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for f in plan.files:
        (root / f.path).parent.mkdir(parents=True, exist_ok=True)
        (root / f.path).write_bytes(f.content)
    (root / "job.sh").write_text(render_script(plan))
    return root


def test_concurrent_pods_pull_an_image_once_and_share_it(tmp_path: Path) -> None:
    exe = tmp_path / "apptainer"
    exe.write_text(FAKE_APPTAINER.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    cache = tmp_path / "cache"
    s = load_settings(
        None, data_root=str(tmp_path), runtime_path=str(exe), image_cache_dir=str(cache)
    )
    count = tmp_path / "pulls"
    procs = []
    for i in range(3):
        p = pod_of(main(image="ghcr.io/x:1"), uid=f"00000000-0000-4000-8000-00000000000{i}")
        p["spec"]["imagePullSecrets"] = [{"name": "regcred"}]
        data = RetrievedPodData.model_validate(
            pg.retrieved(p, secrets=[docker_config("ghcr.io", "robot", "pw")])
        )
        root = lay_out(build_plan(data, s, str(tmp_path / f"pod{i}")))
        procs.append(
            subprocess.Popen(
                ["bash", "job.sh"],
                cwd=root,
                env={**os.environ, "PULL_COUNT": str(count)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
        )
    assert [proc.wait(timeout=60) for proc in procs] == [0, 0, 0]
    assert count.read_text() == "docker://ghcr.io/x:1 robot\n"
    [sif] = [p for p in cache.iterdir() if p.suffix == ".sif"]
    assert sif.read_text() == "SIF"
    assert not list(cache.glob("*.part"))
