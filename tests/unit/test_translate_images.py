"""Registry images converted once into a shared cache (image_cache_dir), with pull secrets."""

from __future__ import annotations

import base64
import json
import netrc
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from interlink_slurm.config import ConfigError, load_settings
from interlink_slurm.translate.images import (
    cached_image,
    credentials,
    enroot_credentials,
    enroot_ref,
    registry_of,
)
from interlink_slurm.translate.plan import JobPlan, PlannedPull
from interlink_slurm.translate.pod import build_plan
from interlink_slurm.translate.script import render_pull_script, render_script
from interlink_slurm.wire import RetrievedPodData, Secret
from tests import podgen as pg
from tests.unit.golden import check_golden
from tests.unit.test_translate import POD_DIR, files, main, plan_of, pod_of, rejection
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
    sif = cached_image(CACHE, "docker://python:3.12")
    assert plan.containers[0].image == sif
    assert sif.startswith(f"{CACHE}/python_3.12-") and sif.endswith(".sif")
    argv = ("apptainer", "pull", "--force", f"{sif}.part", "docker://python:3.12")
    assert plan.image_pulls == (PlannedPull(sif, "docker://python:3.12", argv, None),)
    script = render_script(plan)
    assert f"ils_pull {sif} '' docker://python:3.12 apptainer pull --force {sif}.part " in script
    assert script.index("ils_pull /") < script.index("ils_container main")
    assert plan.runtime_argv["main"][-2:] == (sif, "true")


def test_one_pull_per_image_whatever_the_number_of_containers() -> None:
    p = pod_of(main(image="python:3.12"), pg.container("side", "pass", image="python:3.12"))
    assert len(plan_of(p, cached()).image_pulls) == 1


def test_never_is_only_looked_for_in_the_cache_unless_another_container_pulls_it() -> None:
    never = main(image="python:3.12", imagePullPolicy="Never")
    plan = plan_of(pod_of(never), cached())
    sif = cached_image(CACHE, "docker://python:3.12")
    assert plan.image_pulls == (PlannedPull(sif, "docker://python:3.12", (), None, never=True),)
    assert plan.containers[0].image == sif
    script = render_script(plan)
    assert "ils_pull /" not in script
    assert (
        f"[ -s {sif} ] || {{ echo 'interlink-slurm: image docker://python:3.12 is not present "
        "with pull policy of Never'; exit 1; }"
    ) in script
    # The same image for a container that may pull it: pulled, once.
    side = pg.container("side", "pass", image="python:3.12")
    [pull] = plan_of(pod_of(never, side), cached()).image_pulls
    assert not pull.never and pull.argv


def test_mapped_and_local_images_are_not_pulled() -> None:
    s = cached(images={"python:3.12": "/sif/python.sif"}, image_roots=["/abs"])
    p = pod_of(main(image="python:3.12"), pg.container("side", "pass", image="/abs/x.sif"))
    plan = plan_of(p, s)
    assert plan.image_pulls == ()
    assert "ils_pull" not in render_script(plan)


def test_cache_key_is_the_exact_reference() -> None:
    a, b = cached_image(CACHE, "docker://python:3.12"), cached_image(CACHE, "docker://python:3.13")
    assert a != b and a == cached_image(CACHE, "docker://python:3.12")
    weird = cached_image(CACHE, "docker://reg.example:5000/a/b@sha256:" + "0" * 64)
    assert "/" not in weird.removeprefix(CACHE + "/") and ":" not in weird
    sqsh = cached_image(CACHE, "docker://python:3.12", "sqsh")
    assert sqsh == a.removesuffix(".sif") + ".sqsh"


@pytest.mark.parametrize(
    ("source", "registry"),
    [
        ("docker://python:3.12", "docker.io"),
        ("docker://library/python", "docker.io"),
        ("docker://nvcr.io/nvidia/pytorch:24.05-py3", "nvcr.io"),
        ("docker://localhost/x", "localhost"),
        ("docker://reg:5000/x", "reg:5000"),
        ("docker://index.docker.io/library/python", "docker.io"),
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
    [pull] = plan.image_pulls
    assert pull.auth is not None and pull.auth.startswith("pull/")
    f = files(plan)[pull.auth]
    assert f.mode == 0o600
    assert (
        f.content
        == b"APPTAINER_DOCKER_USERNAME=$oauthtoken\0APPTAINER_DOCKER_PASSWORD=s3cr3t pass\0"
    )
    assert "s3cr3t" not in render_script(plan)


def test_pull_secret_for_another_registry_or_not_named_is_not_used() -> None:
    secret = docker_config("ghcr.io", "u", "p")
    p = pod_of(main(image="nvcr.io/x:1"), imagePullSecrets=[{"name": "regcred"}])
    assert plan_of(p, cached(), secrets=[secret]).image_pulls[0].auth is None
    p = pod_of(main(image="ghcr.io/x:1"))  # the pod does not name the secret
    assert plan_of(p, cached(), secrets=[secret]).image_pulls[0].auth is None


def test_credentials_ignore_malformed_secrets() -> None:
    bad = Secret.model_validate(
        {"metadata": {"name": "x"}, "data": {".dockerconfigjson": "bm90IGpzb24="}}
    )
    assert credentials([bad], "docker.io") is None


def test_singularity_credentials_use_its_own_variables() -> None:
    p = pod_of(main(image="ghcr.io/x:1"), imagePullSecrets=[{"name": "regcred"}])
    plan = plan_of(p, cached(runtime="singularity"), secrets=[docker_config("ghcr.io", "u", "p")])
    [pull] = plan.image_pulls
    assert pull.argv[0] == "singularity"
    assert pull.auth is not None
    assert files(plan)[pull.auth].content.startswith(b"SINGULARITY_DOCKER_USERNAME=u\0")


def test_image_cache_is_for_apptainer_singularity_and_enroot_only() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, data_root="/d", runtime="charliecloud", image_cache_dir="/c")
    assert "image_cache_dir" in str(info.value) and "enroot" in str(info.value)
    assert load_settings(None, data_root="/d", runtime="enroot", image_cache_dir="/c")


# --- enroot: docker:// images imported into .sqsh files -------------------------------------------


@pytest.mark.parametrize(
    ("source", "ref"),
    [
        ("docker://nvcr.io/nvidia/pytorch:24.01-py3", "docker://nvcr.io#nvidia/pytorch:24.01-py3"),
        ("docker://python:3.12", "docker://python:3.12"),
        ("docker://library/python", "docker://library/python"),
        ("docker://docker.io/library/python:3.12", "docker://library/python:3.12"),
        ("docker://reg.example:5000/a/b:1", "docker://reg.example:5000#a/b:1"),
        ("docker://localhost/x", "docker://localhost#x"),
    ],
)
def test_enroot_reference_syntax(source: str, ref: str) -> None:
    assert enroot_ref(source) == ref


def test_enroot_reference_names_docker_hub_when_asked() -> None:
    assert enroot_ref("docker://python:3.12", hub_registry=True) == (
        "docker://registry-1.docker.io#python:3.12"
    )


def enroot_cached(**kw: Any) -> Any:
    return cached(runtime="enroot", **kw)


def test_enroot_imports_a_registry_image_and_starts_the_squashfs_file() -> None:
    plan = plan_of(pod_of(main(image="nvcr.io/nvidia/pytorch:24.01-py3")), enroot_cached())
    source = "docker://nvcr.io/nvidia/pytorch:24.01-py3"
    sqsh = cached_image(CACHE, source, "sqsh")
    argv = (
        "enroot",
        "import",
        "--output",
        f"{sqsh}.part",
        "docker://nvcr.io#nvidia/pytorch:24.01-py3",
    )
    assert plan.image_pulls == (PlannedPull(sqsh, source, argv, None),)
    assert plan.containers[0].image == sqsh
    assert plan.runtime_argv["main"][:2] == ("enroot", "start")
    assert plan.runtime_argv["main"][-2:] == (sqsh, "true")
    script = render_script(plan)
    assert script.index("ils_pull /") < script.index("ils_container main")


def test_enroot_with_the_cache_pulls_unmapped_and_docker_references() -> None:
    p = pod_of(main(image="python:3.12"), pg.container("side", "pass", image="docker://alpine"))
    plan = plan_of(p, enroot_cached())
    assert [pull.source for pull in plan.image_pulls] == ["docker://python:3.12", "docker://alpine"]
    assert all(c.image.endswith(".sqsh") for c in plan.containers)


def test_enroot_without_the_cache_still_needs_a_staged_image() -> None:
    err = rejection(pod_of(main(image="python:3.12")), make_settings(runtime="enroot"))
    assert err.field == "spec.containers[0].image"
    assert "staged on the cluster" in err.reason


@pytest.mark.parametrize("image", ["oras://ghcr.io/x/y:1", "library://alpine:3"])
def test_enroot_cannot_import_other_schemes(image: str) -> None:
    p = pod_of(main(), init=[pg.container("setup", "pass", image=image)])
    err = rejection(p, enroot_cached())
    assert err.field == "spec.initContainers[0].image"
    assert image in err.reason and "docker://" in err.reason
    # Apptainer pulls them.
    assert plan_of(p, cached()).image_pulls[0].source == image


def test_enroot_credentials_are_a_netrc_file_named_by_the_pull_environment() -> None:
    p = pod_of(
        main(image="nvcr.io/nvidia/pytorch:24.01-py3"), imagePullSecrets=[{"name": "regcred"}]
    )
    secret = docker_config("nvcr.io", "$oauthtoken", "$3cr3t")
    plan = plan_of(p, enroot_cached(), secrets=[secret])
    [pull] = plan.image_pulls
    assert pull.auth is not None
    config = pull.auth.removesuffix(".auth")
    assert files(plan)[pull.auth].content == f"ENROOT_CONFIG_PATH={POD_DIR}/{config}\0".encode()
    creds = files(plan)[f"{config}/.credentials"]
    assert creds.mode == 0o600
    assert creds.content == (
        b"machine nvcr.io login $oauthtoken\npassword $3cr3t\n"
        b"default login $oauthtoken\npassword $3cr3t\n"
    )
    # The registry's host picks the user; any token service gets the password.
    assert pull.argv[-1] == "docker://nvcr.io#nvidia/pytorch:24.01-py3"
    assert "3cr3t" not in render_script(plan)


def test_enroot_credentials_parse_as_netrc(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    path.write_bytes(enroot_credentials("reg.example:5000", "robot$ci+x", "p@ss:w0rd$"))
    parsed = netrc.netrc(str(path))
    for host in ("reg.example", "auth.reg.example"):  # the registry, any token service
        login, _, password = parsed.authenticators(host) or ("", "", "")
        assert (login, password) == ("robot$ci+x", "p@ss:w0rd$")


def test_enroot_docker_hub_credentials_name_the_registry_and_its_token_service() -> None:
    p = pod_of(main(image="python:3.12"), imagePullSecrets=[{"name": "regcred"}])
    secret = docker_config("https://index.docker.io/v1/", "robot", "pw")
    plan = plan_of(p, enroot_cached(), secrets=[secret])
    [pull] = plan.image_pulls
    # enroot reads credentials only for a registry named in the reference.
    assert pull.argv[-1] == "docker://registry-1.docker.io#python:3.12"
    assert pull.auth is not None
    creds = files(plan)[f"{pull.auth.removesuffix('.auth')}/.credentials"].content
    assert b"machine registry-1.docker.io login robot\n" in creds
    assert b"machine auth.docker.io login robot\n" in creds


@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("robot", "two words"),
        ("robot", "line\nbreak"),
        ("robot", "tab\there"),
        ("ro bot", "pw"),
        ("robot", "#comment"),
        ("robot", '"quoted"'),
        ("robot", "bell\x07"),
    ],
)
def test_enroot_rejects_credentials_netrc_cannot_hold(user: str, password: str) -> None:
    p = pod_of(main(image="ghcr.io/x:1"), imagePullSecrets=[{"name": "regcred"}])
    err = rejection(p, enroot_cached(), secrets=[docker_config("ghcr.io", user, password)])
    assert err.field == "spec.imagePullSecrets"
    assert "ghcr.io" in err.reason and "netrc" in err.reason
    assert password not in str(err) and user not in str(err).replace("ghcr.io", "")


# --- golden, and the pull for real with stand-in runtimes ----------------------------------------

GOLDEN_UID = "77777777-8888-4999-8aaa-bbbbbbbbbbbb"


@pytest.mark.parametrize("runtime", ["apptainer", "singularity", "enroot"])
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


def test_enroot_create_golden_unpacks_the_pulled_image_after_the_pull() -> None:
    p = pg.pod(
        "pulled",
        [pg.container("main", "print(1)", image="nvcr.io/nvidia/pytorch:24.05-py3")],
        uid=GOLDEN_UID,
    )
    data = RetrievedPodData.model_validate(pg.retrieved(p))
    s = cached(runtime="enroot", enroot_create_dir="/local/enroot")
    plan = build_plan(data, s, f"/data/ils/pods/{GOLDEN_UID}")
    [pull] = plan.image_pulls
    assert [(c.name, c.image) for c in plan.enroot_creates] == [("ils-0", pull.target)]
    check_golden("pulled.enroot-create.sh", render_script(plan))


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


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# Writes its argv (NUL-separated) to the file after its first argument, counts its runs and
# keeps what it sees of ILS_TEST_PASSWORD; fails half-way when its second argument says so.
STAND_IN = """#!{python}
import os, sys
part, calls, seen, mode = sys.argv[1:5]
with open(calls, "a") as f:
    f.write("run\\n")
with open(seen, "wb") as f:
    f.write(os.environb.get(b"ILS_TEST_PASSWORD", b"<unset>"))
with open(part, "wb") as f:
    f.write(b"\\0".join(os.fsencode(a) for a in sys.argv))
sys.exit(3 if mode == "fail" else 0)
"""

SECRET_VALUE = "p a$s'w\"o\\rd\n\t`x` é"


def stand_in_pull(tmp_path: Path, mode: str = "ok", auth: str | None = None) -> PlannedPull:
    exe = executable(tmp_path / "runtime", STAND_IN.format(python=sys.executable))
    target = str(tmp_path / "cache dir" / "image-0123.sif")
    argv = (str(exe), target + ".part", str(tmp_path / "calls"), str(tmp_path / "seen"), mode)
    return PlannedPull(target, "docker://reg.example/x:1", argv, auth)


def pod_dir_with_auth(tmp_path: Path) -> Path:
    pod_dir = tmp_path / "pod 'dir'"
    (pod_dir / "pull").mkdir(parents=True)
    entries = [b"ILS_TEST_USER=robot", b"ILS_TEST_PASSWORD=" + SECRET_VALUE.encode()]
    (pod_dir / "pull" / "x.auth").write_bytes(b"".join(e + b"\0" for e in entries))
    return pod_dir


def run_pulls(pull: PlannedPull, pod_dir: Path) -> subprocess.CompletedProcess[str]:
    """The pod's pull script as the submit host runs it: bash, from the pod's directory."""
    pod_dir.mkdir(parents=True, exist_ok=True)
    script = pod_dir / "submit-host.sh"
    script.write_text(render_pull_script([pull]))
    return subprocess.run(
        ["bash", str(script)],
        cwd=pod_dir,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_pull_script_pulls_once_with_the_credentials(tmp_path: Path) -> None:
    pod_dir = pod_dir_with_auth(tmp_path)
    pull = stand_in_pull(tmp_path, auth="pull/x.auth")
    first = run_pulls(pull, pod_dir)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"pulling {pull.source} into {pull.target}" in first.stdout
    target = Path(pull.target)
    assert target.read_bytes().split(b"\0")[1:] == [os.fsencode(a) for a in pull.argv[1:]]
    assert not Path(pull.target + ".part").exists()
    assert (tmp_path / "seen").read_bytes() == SECRET_VALUE.encode()
    # The image is there: the runtime is not run again.
    second = run_pulls(pull, pod_dir)
    assert second.returncode == 0, second.stdout + second.stderr
    assert (tmp_path / "calls").read_text() == "run\n"


def test_pull_script_without_credentials_gives_the_pull_none(tmp_path: Path) -> None:
    pull = stand_in_pull(tmp_path)
    assert run_pulls(pull, tmp_path).returncode == 0
    assert (tmp_path / "seen").read_bytes() == b"<unset>"


def test_pull_script_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    pull = stand_in_pull(tmp_path, mode="fail")
    Path(pull.target).parent.mkdir()
    Path(pull.target + ".part").write_text("left by a pull that was killed")
    result = run_pulls(pull, tmp_path)
    assert result.returncode == 3  # the runtime's own
    assert "pulling docker://reg.example/x:1" in result.stdout
    assert not Path(pull.target).exists() and not Path(pull.target + ".part").exists()
    assert (tmp_path / "calls").read_text() == "run\n"


def test_pull_script_says_why_when_it_cannot_start(tmp_path: Path) -> None:
    pull = stand_in_pull(tmp_path, auth="pull/missing.auth")
    result = run_pulls(pull, tmp_path)
    assert result.returncode != 0
    assert "missing.auth" in result.stderr
    assert not (tmp_path / "calls").exists()


def test_pull_script_pulls_every_image_and_stops_at_the_first_failure(tmp_path: Path) -> None:
    good = stand_in_pull(tmp_path)
    other = good.target.replace("0123", "4567")
    exe, _, calls, seen, _ = good.argv
    bad = PlannedPull(other, "oras://reg.example/y:2", (exe, other + ".part", calls, seen, "fail"))
    script = tmp_path / "pull.sh"
    script.write_text(render_pull_script([good]))
    ok = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert Path(good.target).exists()
    script.write_text(render_pull_script([bad, good]))
    failed = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True)
    assert failed.returncode == 3  # the pull's own
    assert "interlink-slurm: cannot pull oras://reg.example/y:2" in failed.stdout
    assert not Path(bad.target).exists()


FAKE_ENROOT = """#!{python}
# "enroot import --output DEST REF": refuses an existing DEST, as enroot does; notes the REF and
# the .credentials it was given; "start ...": runs.
import os, sys
if sys.argv[1] == "import":
    dest, ref = sys.argv[3], sys.argv[4]
    if os.path.exists(dest):
        sys.exit("[ERROR] File already exists: " + dest)
    creds = os.path.join(os.environ.get("ENROOT_CONFIG_PATH", "/nonexistent"), ".credentials")
    with open(os.environ["PULL_LOG"], "a") as f:
        f.write(ref + "\\n" + (open(creds).read() if os.path.exists(creds) else "-\\n"))
    with open(dest, "w") as f:
        f.write("SQSH")
sys.exit(0)
"""


def test_enroot_job_imports_the_image_with_its_credentials(tmp_path: Path) -> None:
    exe = executable(tmp_path / "enroot", FAKE_ENROOT.format(python=sys.executable))
    cache = tmp_path / "cache"
    s = load_settings(
        None,
        data_root=str(tmp_path),
        runtime="enroot",
        runtime_path=str(exe),
        image_cache_dir=str(cache),
    )
    p = pod_of(main(image="nvcr.io/nvidia/pytorch:24.01-py3"))
    p["spec"]["imagePullSecrets"] = [{"name": "regcred"}]
    data = RetrievedPodData.model_validate(
        pg.retrieved(p, secrets=[docker_config("nvcr.io", "$oauthtoken", "$ecret")])
    )
    plan = build_plan(data, s, str(tmp_path / "pod"))
    [pull] = plan.image_pulls
    cache.mkdir()
    Path(pull.target + ".part").write_text("left by a pull that was killed")
    root = lay_out(plan)
    log = tmp_path / "pulls"
    job = subprocess.run(
        ["bash", "job.sh"],
        cwd=root,
        env={**os.environ, "PULL_LOG": str(log)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert job.returncode == 0, (
        (root / "job.out").read_text() if (root / "job.out").exists() else job.stdout
    )
    assert Path(pull.target).read_text() == "SQSH"
    assert log.read_text() == (
        "docker://nvcr.io#nvidia/pytorch:24.01-py3\n"
        "machine nvcr.io login $oauthtoken\npassword $ecret\n"
        "default login $oauthtoken\npassword $ecret\n"
    )
    assert not list(cache.glob("*.part"))
